// Rulesets: the list, and one ruleset's editor, versions and dry-run.
import { lazy, Suspense } from 'react'
import { DocumentList } from '../components/DocumentList.jsx'
import { Loading } from '../components/Status.jsx'
import { KINDS } from '../kinds.js'

// The editor (CodeMirror) loads only when a document opens: the list stays light.
const DocumentDetail = lazy(() => import('../components/DocumentDetail.jsx'))

export default function Rulesets({ route }) {
  const id = route.parts[1]
  return id ? (
    <Suspense fallback={<Loading />}>
      <DocumentDetail key={id} kind={KINDS.ruleset} id={id} />
    </Suspense>
  ) : (
    <DocumentList kind={KINDS.ruleset} />
  )
}
