/**
 * The SQLSTATE codes pg-sessions branches on. Decisions are taken on these codes,
 * never on message text, which changes with the server's language and version.
 */
export const SqlState = {
  serializationFailure: '40001',
  deadlockDetected: '40P01',
  uniqueViolation: '23505',
  readOnlySqlTransaction: '25006',
  lockNotAvailable: '55P03',
  queryCanceled: '57014',
  adminShutdown: '57P01',
  crashShutdown: '57P02',
  cannotConnectNow: '57P03',
  connectionException: '08000',
  connectionDoesNotExist: '08003',
  connectionFailure: '08006',
  sqlclientUnableToEstablishSqlconnection: '08001',
  sqlserverRejectedEstablishmentOfSqlconnection: '08004',
  tooManyConnections: '53300',
  insufficientPrivilege: '42501',
  undefinedTable: '42P01',
} as const;

/** Node-level socket errors that mean the server is unreachable or went away. */
const NETWORK_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

const UNAVAILABLE_SQLSTATES = new Set<string>([
  SqlState.adminShutdown,
  SqlState.crashShutdown,
  SqlState.cannotConnectNow,
  SqlState.connectionException,
  SqlState.connectionDoesNotExist,
  SqlState.connectionFailure,
  SqlState.sqlclientUnableToEstablishSqlconnection,
  SqlState.sqlserverRejectedEstablishmentOfSqlconnection,
  SqlState.tooManyConnections,
  SqlState.queryCanceled,
]);

export function sqlStateOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * True when the error says the database cannot serve us now (down, restarting,
 * unreachable, overloaded, timed out) rather than that the request was wrong.
 */
export function isUnavailableError(error: unknown): boolean {
  if (error instanceof AggregateError) return error.errors.some(isUnavailableError);
  const code = sqlStateOf(error);
  if (code && (UNAVAILABLE_SQLSTATES.has(code) || NETWORK_ERROR_CODES.has(code))) return true;
  const message = error instanceof Error ? error.message : '';
  // node-postgres reports these client-side conditions without a code.
  return (
    message.includes('timeout exceeded when trying to connect') ||
    message.includes('Connection terminated') ||
    message.includes('Query read timeout') ||
    message.includes('Client has encountered a connection error')
  );
}

/**
 * True when the connection that raised the error is no longer fit for the pool: no
 * SQLSTATE (the socket failed, or the client broke), or a connection-exception or
 * operator-intervention class (08, 57P: the server ended the session).
 */
export function endsConnection(error: unknown): boolean {
  const code = sqlStateOf(error);
  return !code?.match(/^[0-9A-Z]{5}$/) || code.startsWith('08') || code.startsWith('57P');
}

/** True when the server is alive but read-only: a standby, or a demoted primary. */
export function isReadOnlyError(error: unknown): boolean {
  return sqlStateOf(error) === SqlState.readOnlySqlTransaction;
}
