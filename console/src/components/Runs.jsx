// A plan's occurrences, newest first: what each targeted, sent and why users were held back.
export function Runs({ runs }) {
  return (
    <section aria-labelledby="runs-title">
      <h2 id="runs-title">Runs</h2>
      {runs.length ? (
        <table data-testid="runs-table">
          <thead>
            <tr>
              <th scope="col">occurrence</th>
              <th scope="col">status</th>
              <th scope="col" className="num">targeted</th>
              <th scope="col" className="num">sent</th>
              <th scope="col" className="num">entered</th>
              <th scope="col">blocked</th>
            </tr>
          </thead>
          <tbody>
            {runs.map((run) => (
              <tr key={run.occurrence}>
                <td>{run.occurrence}</td>
                <td>{run.status}</td>
                <td className="num">{run.targeted}</td>
                <td className="num">{run.sent}</td>
                <td className="num">{run.entered}</td>
                <td>
                  {Object.entries(run.blocked || {})
                    .map(([reason, count]) => `${reason}: ${count}`)
                    .join(', ')}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <p className="muted">No runs yet.</p>
      )}
    </section>
  )
}
