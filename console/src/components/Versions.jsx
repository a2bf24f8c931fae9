// Compare two kept versions of a document.
import { useEffect, useState } from 'react'
import { enc, get } from '../api.js'
import { json } from '../format.js'
import { DiffView } from './DiffView.jsx'
import { Failure, Loading } from './Status.jsx'

export function Versions({ kind, id, versions, current }) {
  const sorted = [...versions].sort((a, b) => a - b)
  const [older, setOlder] = useState(sorted.length > 1 ? sorted[sorted.length - 2] : current)
  const [newer, setNewer] = useState(current)
  const [texts, setTexts] = useState(null)
  const [error, setError] = useState(null)
  useEffect(() => {
    let live = true
    const fetchVersion = (version) => get(`${kind.base}/${enc(id)}?version=${version}`).then((body) => json(body.document))
    Promise.all([fetchVersion(older), fetchVersion(newer)])
      .then((found) => live && setTexts(found))
      .catch((failure) => live && setError(failure))
    return () => {
      live = false
    }
  }, [kind, id, older, newer])
  const picker = (label, value, set) => (
    <label className="inline">
      {label}{' '}
      <select value={value} onChange={(event) => set(Number(event.target.value))}>
        {sorted.map((version) => (
          <option key={version} value={version}>
            {version}
          </option>
        ))}
      </select>
    </label>
  )
  return (
    <div>
      <p className="muted">The server keeps the latest versions; the newest is active.</p>
      {picker('Older version', older, setOlder)} {picker('Newer version', newer, setNewer)}
      <Failure error={error} />
      {texts ? <DiffView before={texts[0]} after={texts[1]} label={`${kind.noun} ${id}`} /> : !error && <Loading />}
    </div>
  )
}
