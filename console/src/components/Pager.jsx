// Page through a long list: only one page of rows is ever in the DOM, so 10,000 rulesets render as fast as 50.
export const PAGE_SIZE = 50

export function paged(items, page) {
  return items.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)
}

export function Pager({ total, page, onPage, label }) {
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE))
  const first = total ? page * PAGE_SIZE + 1 : 0
  const last = Math.min(total, (page + 1) * PAGE_SIZE)
  return (
    <nav className="pager" aria-label={`${label} pages`}>
      <button type="button" onClick={() => onPage(page - 1)} disabled={page <= 0}>
        Previous
      </button>
      <span aria-live="polite" data-testid="pager-range">
        {first}–{last} of {total}
      </span>
      <button type="button" onClick={() => onPage(page + 1)} disabled={page + 1 >= pages}>
        Next
      </button>
    </nav>
  )
}
