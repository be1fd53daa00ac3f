// The server, as the page sees it: the Accounts and Chat services over
// gRPC-Web on the origin that served the page, each call carrying the
// session's token as `authorization: Bearer TOKEN`, as on the gRPC door.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Accounts, Chat } from "./gen/meshtalk/v1/meshtalk_pb";

let token: string | null = null;

/** The token later calls carry; null after logging out. */
export function useToken(next: string | null): void {
  token = next;
}

const bearer: Interceptor = (next) => (request) => {
  if (token !== null) {
    request.header.set("authorization", `Bearer ${token}`);
  }
  return next(request);
};

const transport = createGrpcWebTransport({
  baseUrl: location.origin,
  interceptors: [bearer],
});

export const accounts = createClient(Accounts, transport);
export const chat = createClient(Chat, transport);

/**
 * Options for a one-shot call. Never for Subscribe: a deadline there would
 * end a healthy stream.
 */
export const UNARY = { timeoutMs: 15_000 };

/** Whether the server refused the token (logged out, account deleted). */
export function isAuthLost(error: unknown): boolean {
  return ConnectError.from(error).code === Code.Unauthenticated;
}

/**
 * Whether an operator ended the session (a kick or a suspension): the only
 * refusal that ends a `Subscribe` stream with PERMISSION_DENIED.
 */
export function isRemoved(error: unknown): boolean {
  return ConnectError.from(error).code === Code.PermissionDenied;
}

/**
 * Whether a call failed for want of the server (down, restarting, network
 * gone) rather than because the server refused it: such a call is worth
 * making again once the stream is back.
 */
export function isUnreachable(error: unknown): boolean {
  const code = ConnectError.from(error).code;
  return (
    code === Code.Unavailable ||
    code === Code.Unknown ||
    code === Code.DeadlineExceeded ||
    code === Code.Canceled
  );
}

/**
 * Why the server is out of reach, in words for the banner: the server's
 * own when it said goodbye ("the server is shutting down"), else a plain
 * one (the browser's are "Failed to fetch" and the like).
 */
export function outage(error: unknown): string {
  const failure = ConnectError.from(error);
  if (failure.code === Code.Unavailable && failure.rawMessage) {
    return failure.rawMessage;
  }
  return "the connection was lost";
}

/** The server's words for a refusal, without the code's prefix. */
export function reason(error: unknown): string {
  return ConnectError.from(error).rawMessage || "the server refused";
}
