// The console's frame: sign-in, the navigation and the page the hash route names. Pages load on demand so
// the first page does not wait for the editor, graph and chart libraries.
import { lazy, Suspense, useEffect, useRef, useState } from 'react'
import { apiKey, signedIn, signOut } from './api.js'
import { useRoute } from './router.js'
import { SignIn } from './SignIn.jsx'
import { Loading } from './components/Status.jsx'

const PAGES = {
  rulesets: { label: 'Rulesets', page: lazy(() => import('./pages/Rulesets.jsx')) },
  journeys: { label: 'Journeys', page: lazy(() => import('./pages/Journeys.jsx')) },
  users: { label: 'Users', page: lazy(() => import('./pages/Users.jsx')) },
  actions: { label: 'Actions', page: lazy(() => import('./pages/Actions.jsx')) },
  'dead-letters': { label: 'Dead letters', page: lazy(() => import('./pages/DeadLetters.jsx')) },
  audiences: { label: 'Segments & plans', page: lazy(() => import('./pages/Audiences.jsx')) },
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
