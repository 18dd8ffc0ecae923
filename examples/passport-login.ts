// Sign-in with koa-passport and passport-local on pg-sessions, unchanged from koa-session.
// The README's switching guide shows this file; tests/ecosystem/passport.test.ts runs it
// on two app nodes (login, the user on the other node, logout, a wrong password).
import type Koa from 'koa';
import koaPassport from 'koa-passport';
import type Router from 'koa-router';
import { Strategy as LocalStrategy } from 'passport-local';

export interface Account {
  readonly id: string;
  readonly username: string;
  readonly password: string;
  readonly name: string;
}

/**
 * Mounts passport after `sessions()` and a body parser: POST /login (a form or JSON with
 * `username` and `password`), POST /logout, GET /me. Returns the passport instance for
 * more routes.
 */
export function passportLogin(
  app: Koa,
  router: Router,
  accounts: readonly Account[],
): InstanceType<typeof koaPassport.KoaPassport> {
  const passport = new koaPassport.KoaPassport();
  passport.use(
    new LocalStrategy((username, password, done) => {
      const account = accounts.find((candidate) => candidate.username === username);
      // A real app compares a password hash (argon2, bcrypt), never the password itself.
      if (!account || account.password !== password) {
        done(null, false, { message: 'wrong username or password' });
        return;
      }
      done(null, account);
    }),
  );
  // The session keeps the account id (ctx.session.passport.user), not the account.
  passport.serializeUser((account, done) => done(null, (account as Account).id));
  passport.deserializeUser((id: string, done) => {
    done(null, accounts.find((account) => account.id === id) ?? false);
  });
  app.use(passport.initialize());
  app.use(passport.session());

  // passport regenerates the session at login (a new token, same data) and saves it
  // before the redirect: ctx.session.regenerate(callback), then save(callback).
  router.post(
    '/login',
    passport.authenticate('local', { successRedirect: '/me', failureRedirect: '/login?failed=1' }),
  );
  router.post('/logout', async (ctx) => {
    await ctx.logout();
    ctx.redirect('/');
  });
  router.get('/me', (ctx) => {
    if (!ctx.isAuthenticated()) {
      ctx.status = 401;
      ctx.body = { error: 'not logged in' };
      return;
    }
    const account = ctx.state.user as Account;
    ctx.body = { id: account.id, name: account.name };
  });
  return passport;
}
