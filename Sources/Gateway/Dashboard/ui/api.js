// The admin API client. The token lives in sessionStorage only (never the URL, never
// localStorage) and travels in the Authorization header of every call.

const TOKEN_KEY = 'corral.adminToken';

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) { sessionStorage.setItem(TOKEN_KEY, value); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); },
  /** Called when the admin API refuses the stored token (set by the app). */
  onUnauthorized: () => {},
};

/** An admin API error: the HTTP status and the server's `error.message`. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** True for the error a fetch throws when its AbortSignal fired (a page was left). */
export const isAbort = (error) => error?.name === 'AbortError';

async function failure(response) {
  const text = await response.text();
  let message = text || response.statusText;
  try {
    const body = JSON.parse(text);
    message = body?.error?.message ?? (typeof body?.error === 'string' ? body.error : message);
  } catch { /* not JSON: keep the text */ }
  return new ApiError(response.status, `${message} (HTTP ${response.status})`);
}

function headers(token, json) {
  const h = { authorization: `Bearer ${token}` };
  if (json) h['content-type'] = 'application/json';
  return h;
}

/**
 * Calls an admin route and returns its JSON (null for 204). Throws ApiError with the server's
 * message; a 401 for the stored token also signs the tab out.
 */
export async function api(path, { method = 'GET', body, signal, token = session.token } = {}) {
  const response = await fetch(path, {
    method, signal, headers: headers(token, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401 && token === session.token) session.onUnauthorized(error);
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

/**
 * Reads a server-sent event stream from an admin route with fetch (EventSource cannot send the
 * token) and calls onEvent(name, data) with each event's parsed JSON. Resolves when the stream ends.
 */
export async function stream(path, onEvent, signal) {
  const response = await fetch(path, { signal, headers: headers(session.token, false) });
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401) session.onUnauthorized(error);
    throw error;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join('\n')));
    }
  }
}

/** A model id as a path under /admin/models/ (ids may contain '/', kept as separators). */
export const modelPath = (id) => id.split('/').map(encodeURIComponent).join('/');
