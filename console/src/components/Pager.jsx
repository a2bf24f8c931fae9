// Page through a long list the API serves a page at a time (`usePagedList`): only one page of rows is ever
// fetched or in the DOM, so 10,000 rulesets render as fast as 50.
export const PAGE_SIZE = 50

/** Previous / Next and the range shown: `list` is what `usePagedList` returns. */
export function Pager({ list, label }) {
  const shown = list.items.length
  const first = list.page * PAGE_SIZE + 1
  return (
    <nav className="pager" aria-label={`${label} pages`}>
      <button type="button" onClick={list.onPrevious} disabled={list.page <= 0}>
        Previous
      </button>
      <span aria-live="polite" data-testid="pager-range">
        {shown ? `${first}–${first + shown - 1}` : '0–0'} of {list.total}
      </span>
      <button type="button" onClick={list.onNext} disabled={!list.hasNext}>
        Next
      </button>
    </nav>
  )
}
