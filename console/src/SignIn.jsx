// Sign in with an API key, checked against the API before it is kept (sessionStorage only). An empty key
// signs in to a server without keys, which the same check tells apart.
import { useState } from 'react'
import { api, signIn } from './api.js'

export function SignIn({ onSignedIn }) {
  const [key, setKey] = useState('')
  const [problem, setProblem] = useState(null)
  const [busy, setBusy] = useState(false)

  const submit = async (event) => {
    event.preventDefault()
    setBusy(true)
    setProblem(null)
    try {
      // /v1/actions needs only the `events` scope; a 403 there still proves the key is known.
      await api('GET', '/v1/actions?limit=1', undefined, key.trim())
      signIn(key.trim())
      onSignedIn()
    } catch (error) {
      if (error.status === 403) {
        signIn(key.trim())
        onSignedIn()
      } else if (error.status === 401) {
        setProblem(key.trim() ? 'The server does not know this key.' : 'This server needs an API key.')
      } else {
        setProblem(error.message)
      }
    } finally {
      setBusy(false)
    }
  }

  return (
    <main className="signin" id="main">
      <h1>Beacon console</h1>
      <form onSubmit={submit} aria-describedby="signin-help">
        <label htmlFor="api-key">API key</label>
        <input
          id="api-key"
          type="password"
          autoComplete="off"
          value={key}
          onChange={(event) => setKey(event.target.value)}
          autoFocus
        />
        <p id="signin-help" className="muted">
          One of the server's <code>BEACON_API_KEYS</code>. Leave it empty for a server without keys. The key is
          kept in this tab only and forgotten when it closes.
        </p>
        {problem && (
          <p className="failure" role="alert">
            {problem}
          </p>
        )}
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
    </main>
  )
}
