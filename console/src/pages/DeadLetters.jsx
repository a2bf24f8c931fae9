export default function DeadLetters() {
  return <h1>DeadLetters</h1>
}
