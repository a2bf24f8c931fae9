// Every call the console makes goes through the public HTTP API with the signed-in key. The key lives in
// sessionStorage only: it goes when the tab closes, and no other tab or later visit can read it.
const KEY_NAME = 'beacon.apiKey'
const SIGNED_IN = 'beacon.signedIn'

export function apiKey() {
  return sessionStorage.getItem(KEY_NAME) || ''
}

export function signedIn() {
  return sessionStorage.getItem(SIGNED_IN) === '1'
}

export function signIn(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key)
  else sessionStorage.removeItem(KEY_NAME)
  sessionStorage.setItem(SIGNED_IN, '1')
}

export function signOut() {
  sessionStorage.removeItem(KEY_NAME)
  sessionStorage.removeItem(SIGNED_IN)
}

/** An error answer of the API: its status and its `{"error": {code, message, path, errors?}}` body. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {}
    super(error.message || `HTTP ${status}`)
    this.status = status
    this.code = error.code || 'http_error'
    this.path = error.path || null
    // A 422 lists every problem; other errors name one at most.
    this.errors = error.errors || (error.path ? [{ path: error.path, message: error.message }] : [])
  }
}

/** Call the API: `body` is sent as JSON (a string is sent as it is: the editor's text, unparsed). */
export async function api(method, path, body, key = apiKey()) {
  const headers = { Accept: 'application/json' }
  if (key) headers.Authorization = `Bearer ${key}`
  let payload
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json'
    payload = typeof body === 'string' ? body : JSON.stringify(body)
  }
  const response = await fetch(path, { method, headers, body: payload })
  const text = await response.text()
  let data = null
  try {
    data = text ? JSON.parse(text) : null
  } catch {
    data = text
  }
  if (!response.ok) throw new ApiError(response.status, data)
  return data
}

export const get = (path) => api('GET', path)

/** Query string from an object, leaving out empty values. */
export function query(params) {
  const search = new URLSearchParams()
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(name, String(value))
  }
  const text = search.toString()
  return text ? `?${text}` : ''
}

export const enc = encodeURIComponent

export const LIST_LIMIT_MAX = 1000 // the API's most documents a page of a list (api/paging.py)

/** Every item of a document list (`/v1/rulesets`, ...: the items are under the path's last word), following
 * its pages' `next`: for pickers that offer them all. Tables show one page at a time (`usePagedList`). */
export async function getAll(path) {
  const listKey = path.slice(path.lastIndexOf('/') + 1)
  const items = []
  let after = ''
  do {
    const page = await get(`${path}${query({ limit: LIST_LIMIT_MAX, after })}`)
    items.push(...page[listKey])
    after = page.next
  } while (after)
  return { [listKey]: items }
}
