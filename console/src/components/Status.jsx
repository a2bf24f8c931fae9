// How a page says it is loading or that a call failed (announced to screen readers).
export function Failure({ error }) {
  if (!error) return null
  return (
    <p className="failure" role="alert">
      {error.status ? `${error.status} ${error.code}: ` : ''}
      {error.message}
      {error.path ? ` (at ${error.path})` : ''}
    </p>
  )
}

export function Loading({ what = 'Loading' }) {
  return (
    <p className="muted" role="status">
      {what}…
    </p>
  )
}
