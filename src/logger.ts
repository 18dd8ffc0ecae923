import { debuglog } from 'node:util';

/**
 * The logger an application passes in: pino's (and bunyan's) call shape,
 * `logger.warn({ err }, 'message')`. Only these four levels are used.
 */
export interface Logger {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

/**
 * Without a logger, messages go to `util.debuglog('pg-sessions')`, as Koa does:
 * silent unless NODE_DEBUG=pg-sessions.
 */
export function defaultLogger(): Logger {
  const log = debuglog('pg-sessions');
  const write = (level: string) => (fields: object, message: string) =>
    log('%s %s %j', level, message, fields);
  return { debug: write('debug'), info: write('info'), warn: write('warn'), error: write('error') };
}
