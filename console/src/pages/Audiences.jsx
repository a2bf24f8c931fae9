export default function Audiences() {
  return <h1>Audiences</h1>
}
