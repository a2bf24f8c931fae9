// One ruleset or journey: edit it (validated by the server, errors at their paths), compare versions,
// dry-run it on events, and for a journey, its graph with live counts.
import { lazy, Suspense, useState } from 'react'
import { api, enc } from '../api.js'
import { navigate } from '../router.js'
import { json } from '../format.js'
import { useApi } from './useApi.js'
import { Failure, Loading } from './Status.jsx'
import { TabPanel, Tabs } from './Tabs.jsx'
import { JsonEditor } from './JsonEditor.jsx'
import { Versions } from './Versions.jsx'
import { DryRun } from './DryRun.jsx'

const JourneyGraph = lazy(() => import('./JourneyGraph.jsx'))

export default function DocumentDetail({ kind, id }) {
  const isNew = id === 'new'
  const { data, error, loading, reload } = useApi(isNew ? null : `${kind.base}/${enc(id)}`)
  const [tab, setTab] = useState(kind.noun === 'journey' && !isNew ? 'graph' : 'edit')
  // The editor's text outlives its tab, so a dry-run can run the unsaved draft.
  const [draft, setDraft] = useState(null)
  if (!isNew && loading && !data) return <Loading />
  if (!isNew && error) return <Failure error={error} />
  const document = isNew ? kind.template : data.document
  const tabs = [
    ...(kind.noun === 'journey' && !isNew ? [{ id: 'graph', label: 'Graph' }] : []),
    { id: 'edit', label: 'Edit' },
    ...(isNew ? [] : [{ id: 'versions', label: `Versions (${data.versions.length})` }]),
    { id: 'dry-run', label: 'Dry-run' },
  ]
  return (
    <section aria-labelledby="doc-title">
      <h1 id="doc-title">
        {isNew ? `New ${kind.noun}` : `${kind.noun[0].toUpperCase()}${kind.noun.slice(1)} ${id}`}
        {!isNew && <span className="muted"> · version {data.version}</span>}
      </h1>
      <Tabs tabs={tabs} selected={tab} onSelect={setTab} label={`${kind.noun} views`} />
      {tab === 'graph' && (
        <TabPanel id="graph">
          <Suspense fallback={<Loading what="Drawing" />}>
            <JourneyGraph id={id} document={document} />
          </Suspense>
        </TabPanel>
      )}
      {tab === 'edit' && (
        <TabPanel id="edit">
          <Editor
            kind={kind}
            id={isNew ? '' : id}
            text={draft ?? json(document)}
            onText={setDraft}
            onSaved={reload}
          />
        </TabPanel>
      )}
      {tab === 'versions' && (
        <TabPanel id="versions">
          <Versions kind={kind} id={id} versions={data.versions} current={data.version} />
        </TabPanel>
      )}
      {tab === 'dry-run' && (
        <TabPanel id="dry-run">
          <DryRun kind={kind} id={isNew ? '' : id} draft={draft} version={isNew ? null : data.version} />
        </TabPanel>
      )}
    </section>
  )
}

function Editor({ kind, id, text, onText, onSaved }) {
  // The editor starts from the draft when its tab opens; typing then flows out through onText.
  const [initial] = useState(text)
  const [newId, setNewId] = useState(id)
  const [errors, setErrors] = useState([])
  const [outcome, setOutcome] = useState(null)
  const [failure, setFailure] = useState(null)
  const [busy, setBusy] = useState(false)

  const run = async (action) => {
    setBusy(true)
    setOutcome(null)
    setFailure(null)
    try {
      if (action === 'validate') {
        await api('POST', kind.validate, text)
        setErrors([])
        setOutcome('Valid.')
      } else {
        const saved = await api('PUT', `${kind.base}/${enc(newId.trim())}`, text)
        setErrors([])
        setOutcome(`Saved version ${saved.version}.`)
        if (!id) navigate(`/${kind.route}/${enc(saved.id)}`)
        else onSaved()
      }
    } catch (error) {
      if (error.status === 422 && error.errors.length) setErrors(error.errors)
      else setFailure(error)
    } finally {
      setBusy(false)
    }
  }

  return (
    <div>
      {!id && (
        <label className="inline">
          Id of the new {kind.noun}{' '}
          <input value={newId} onChange={(event) => setNewId(event.target.value)} required />
        </label>
      )}
      <JsonEditor
        value={initial}
        onChange={onText}
        serverErrors={errors}
        kind={kind.noun}
        label={`${kind.noun} document (JSON)`}
      />
      <div className="actions">
        <button type="button" onClick={() => run('validate')} disabled={busy}>
          Validate
        </button>
        <button type="button" onClick={() => run('save')} disabled={busy || !newId.trim()}>
          Save
        </button>
        <span role="status" className="ok">
          {outcome}
        </span>
      </div>
      <Failure error={failure} />
      {errors.length > 0 && (
        <section aria-labelledby="errors-title" className="errors">
          <h2 id="errors-title">{errors.length === 1 ? '1 problem' : `${errors.length} problems`}</h2>
          <ul data-testid="validation-errors">
            {errors.map((error, index) => (
              <li key={index}>
                <code>{error.path || 'document'}</code>: {error.message}
              </li>
            ))}
          </ul>
        </section>
      )}
    </div>
  )
}
