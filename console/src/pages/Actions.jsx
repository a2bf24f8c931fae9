// The action ledger, newest first, filtered by user, rule and status.
import { useState } from 'react'
import { query } from '../api.js'
import { useApi } from '../components/useApi.js'
import { ActionRows } from './Users.jsx'

const STATUSES = ['', 'pending', 'scheduled', 'delivered', 'failed', 'skipped', 'dead', 'cancelled']

export default function Actions({ route }) {
  const [form, setForm] = useState({ user_id: route.params.get('user_id') || '', rule: '', limit: '100' })
  const [applied, setApplied] = useState(form)
  const [status, setStatus] = useState('')
  const actions = useApi(`/v1/actions${query(applied)}`)
  const shown = actions.data
    ? { ...actions, data: { actions: actions.data.actions.filter((action) => !status || action.status === status) } }
    : actions
  const field = (name, label) => (
    <label>
      {label} <input value={form[name]} onChange={(event) => setForm({ ...form, [name]: event.target.value })} />
    </label>
  )
  return (
    <section aria-labelledby="actions-title">
      <h1 id="actions-title">Actions</h1>
      <form
        className="row"
        onSubmit={(event) => {
          event.preventDefault()
          setApplied(form)
        }}
      >
        {field('user_id', 'User id')}
        {field('rule', 'Rule id')}
        {field('limit', 'At most')}
        <button type="submit">Filter</button>
        <button type="button" onClick={actions.reload}>
          Refresh
        </button>
        <label>
          Status{' '}
          <select value={status} onChange={(event) => setStatus(event.target.value)}>
            {STATUSES.map((name) => (
              <option key={name} value={name}>
                {name || 'any'}
              </option>
            ))}
          </select>
        </label>
      </form>
      <ActionRows actions={shown} showUser />
    </section>
  )
}
