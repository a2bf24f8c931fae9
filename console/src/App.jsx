// The console's frame: sign-in, the navigation and the page the hash route names. The pages themselves are
// light and bundled here: React holds a lazily loaded page back for up to 300 ms after its code arrives (it
// batches Suspense reveals), which would be a third of the render budget. The heavy parts (editor, graph,
// charts) load on demand inside them.
import { lazy, Suspense, useEffect, useRef, useState } from 'react'
import { apiKey, signedIn, signOut } from './api.js'
import { useRoute } from './router.js'
import { SignIn } from './SignIn.jsx'
import { Loading } from './components/Status.jsx'
import Rulesets from './pages/Rulesets.jsx'
import Journeys from './pages/Journeys.jsx'
import Users from './pages/Users.jsx'
import Actions from './pages/Actions.jsx'
import DeadLetters from './pages/DeadLetters.jsx'
import Audiences from './pages/Audiences.jsx'

const PAGES = {
  rulesets: { label: 'Rulesets', page: Rulesets },
  journeys: { label: 'Journeys', page: Journeys },
  users: { label: 'Users', page: Users },
  actions: { label: 'Actions', page: Actions },
  'dead-letters': { label: 'Dead letters', page: DeadLetters },
  audiences: { label: 'Segments & plans', page: Audiences },
  reports: { label: 'Reports', page: lazy(() => import('./pages/Reports.jsx')) },
}

export function App() {
  const [inside, setInside] = useState(signedIn())
  const route = useRoute()
  const main = useRef(null)
  const section = PAGES[route.parts[0]] ? route.parts[0] : 'rulesets'
  const Page = PAGES[section].page

  // A new page moves the focus to its content, as a page load would, for keyboard and screen-reader users.
  useEffect(() => {
    main.current?.focus({ preventScroll: true })
  }, [route.parts.join('/')])

  if (!inside) return <SignIn onSignedIn={() => setInside(true)} />
  return (
    <div className="frame">
      <a className="skip" href="#main" onClick={(event) => (event.preventDefault(), main.current?.focus())}>
        Skip to content
      </a>
      <header className="top">
        <span className="brand">Beacon console</span>
        <span className="muted">{apiKey() ? 'signed in with an API key' : 'open server (no key)'}</span>
        <a href="/docs">API docs</a>
        <button
          type="button"
          onClick={() => {
            signOut()
            setInside(false)
          }}
        >
          Sign out
        </button>
      </header>
      <nav className="side" aria-label="Sections">
        <ul>
          {Object.entries(PAGES).map(([id, { label }]) => (
            <li key={id}>
              <a href={`#/${id}`} aria-current={section === id ? 'page' : undefined}>
                {label}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <main id="main" ref={main} tabIndex={-1}>
        <Suspense fallback={<Loading />}>
          <Page route={route} />
        </Suspense>
      </main>
    </div>
  )
}
