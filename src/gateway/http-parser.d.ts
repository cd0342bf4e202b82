// Node's own HTTP/1.1 parser (llhttp), the one node:http runs on, from its `_http_common`
// module: what the HTTP/1.1 upstream client (upstream.ts) and the raw front (h1-front.ts) use of it. Node ships no types for it.
declare module '_http_common' {
  export class HTTPParser {
    static readonly REQUEST: number;
    static readonly RESPONSE: number;
    static readonly kOnMessageBegin: number;
    static readonly kOnHeaders: number;
    static readonly kOnHeadersComplete: number;
    static readonly kOnBody: number;
    static readonly kOnMessageComplete: number;
    /** Called after each read the parser took itself (consume): with what execute would have returned. */
    static readonly kOnExecute: number;
    static readonly kLenientNone: number;
    initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
    /** Bytes parsed, or the parse error (with `code`, e.g. HPE_INVALID_CONSTANT). */
    execute(data: Buffer): number | Error;
    /** The connection ended: completes a body delimited by the close. */
    finish(): number | Error | undefined;
    free(): void;
    /** Reads a socket's stream handle itself (as node:http's server does): no JavaScript per read but its callbacks. */
    consume(handle: unknown): void;
    /** Gives the handle's reads back to its socket. */
    unconsume(): void;
    /** A copy of the read being parsed (in kOnExecute, after consume). */
    getCurrentBuffer(): Buffer;
    [callback: number]: unknown;
  }
  /** Method names by llhttp's method number (a request head's `method` argument). */
  export const methods: string[];
}
