// Where a server error's path (`rules[0].when.absence.within`) is in the editor's text. The server names
// paths in the document it parsed; this parser keeps each value's offsets so the error can be underlined
// where it is. A path that goes past what exists (a missing required field) stops at its deepest parent.

/** Parse JSON text into nodes with offsets; throws SyntaxError like JSON.parse (we only call it on text
 * JSON.parse accepted). */
export function parseWithOffsets(text) {
  let at = 0
  const space = () => {
    while (at < text.length && ' \t\n\r'.includes(text[at])) at++
  }
  const string = () => {
    const start = at
    at++
    while (text[at] !== '"') at += text[at] === '\\' ? 2 : 1
    at++
    return { from: start, to: at, key: JSON.parse(text.slice(start, at)) }
  }
  const value = () => {
    space()
    const from = at
    const char = text[at]
    if (char === '{') {
      at++
      const properties = []
      space()
      if (text[at] === '}') at++
      else
        for (;;) {
          space()
          const name = string()
          space()
          at++ // the colon
          const child = value()
          properties.push({ name: name.key, keyFrom: name.from, keyTo: name.to, value: child })
          space()
          if (text[at++] === '}') break
        }
      return { kind: 'object', from, to: at, properties }
    }
    if (char === '[') {
      at++
      const items = []
      space()
      if (text[at] === ']') at++
      else
        for (;;) {
          items.push(value())
          space()
          if (text[at++] === ']') break
        }
      return { kind: 'array', from, to: at, items }
    }
    if (char === '"') {
      const found = string()
      return { kind: 'scalar', from: found.from, to: found.to }
    }
    while (at < text.length && !',}] \t\n\r'.includes(text[at])) at++
    return { kind: 'scalar', from, to: at }
  }
  return value()
}

/** The text range a path names: {from, to, exact} (exact false when it stopped at a parent). */
export function locate(text, path) {
  let root
  try {
    JSON.parse(text)
    root = parseWithOffsets(text)
  } catch {
    return { from: 0, to: Math.min(text.length, 1), exact: false }
  }
  let node = root
  let range = { from: root.from, to: Math.min(root.to, root.from + 1) }
  // Where to point when the path goes on past what exists: the key (or item) we got to, not its whole value.
  let anchor = range
  let rest = path && path !== 'body' ? path : ''
  while (rest) {
    if (node.kind === 'array') {
      const match = /^\[(\d+)\]\.?/.exec(rest)
      const item = match && node.items[Number(match[1])]
      if (!item) return { ...anchor, exact: false }
      node = item
      range = { from: item.from, to: item.to }
      anchor = { from: item.from, to: item.from + 1 }
      rest = rest.slice(match[0].length)
    } else if (node.kind === 'object') {
      // Keys may hold dots (node ids): take the longest key the path continues with.
      let best = null
      for (const property of node.properties) {
        const name = property.name
        if (rest === name || rest.startsWith(name + '.') || rest.startsWith(name + '[')) {
          if (!best || name.length > best.name.length) best = property
        }
      }
      if (!best) return { ...anchor, exact: false }
      node = best.value
      range = { from: best.keyFrom, to: best.value.to }
      anchor = { from: best.keyFrom, to: best.keyTo }
      rest = rest.slice(best.name.length).replace(/^\./, '')
      if (!rest) range = { from: best.value.from, to: best.value.to }
    } else {
      return { ...anchor, exact: false }
    }
  }
  return { ...range, exact: true }
}
