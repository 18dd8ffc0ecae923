// Compile-time test: the application's own tables on ctx.db, declared by module
// augmentation of RequestDatabase (checked by `npm run typecheck`). The augmentation is
// global to the program, as it is in an application.

import Koa from 'koa';
import type { Generated } from 'kysely';
import { sessions } from '../../src/index.js';

interface OrderTable {
  id: Generated<number>;
  user_id: string;
  total_cents: number;
}

interface AppDatabase {
  orders: OrderTable;
}

declare module '../../src/index.js' {
  interface RequestDatabase extends AppDatabase {}
}

const app = new Koa();
app.use(sessions({ database: 'postgres://localhost/app', transaction: 'request' }));
app.use(async (ctx) => {
  const db = ctx.db!;
  const order = await db
    .insertInto('orders')
    .values({ user_id: 'user-1', total_cents: 1_250 })
    .returning(['id', 'total_cents'])
    .executeTakeFirstOrThrow();
  const id: number = order.id;
  // The sessions schema stays reachable, as before.
  await db.selectFrom('sessions.event').select('kind').execute();
  // @ts-expect-error a table the application did not declare
  await db.insertInto('invoices').values({ id: 1 }).execute();
  // @ts-expect-error a column of the wrong type
  await db.insertInto('orders').values({ user_id: 'user-1', total_cents: 'a lot' }).execute();
  // @ts-expect-error ctx.db is undefined outside request transactions
  await ctx.db.selectFrom('orders').selectAll().execute();
  ctx.body = { id };
});
