// Completion from the language's JSON Schema (GET /v1/schemas/{ruleset|journey}.json): the keys an object at
// the cursor may hold, and the enumerated values of the key being typed (`"op": "`, `"action": "`), found by
// walking the schema along the cursor's JSON path. Without the schema (an older server) it falls back to
// the language's word list.
import { syntaxTree } from '@codemirror/language'
import { get } from '../api.js'
import { WORDS } from './vocabulary.js'

const VALUE_TYPES = new Set(['Object', 'Array', 'String', 'Number', 'True', 'False', 'Null'])
const loaded = new Map()

/** The schema of a language, fetched once per page (null when the server has none). */
export function languageSchema(kind) {
  if (!loaded.has(kind)) loaded.set(kind, get(`/v1/schemas/${kind}.json`).catch(() => null))
  return loaded.get(kind)
}

/** The JSON path (keys and indices) of a value node, from the document's root. */
function pathOf(state, node) {
  const path = []
  let child = node
  for (let parent = node.parent; parent; child = parent, parent = parent.parent) {
    if (parent.name === 'Property') {
      const name = parent.getChild('PropertyName')
      if (name && name.from !== child.from) path.unshift(unquote(state.sliceDoc(name.from, name.to)))
    } else if (parent.name === 'Array') {
      let index = 0
      for (let item = parent.firstChild; item && item.from < child.from; item = item.nextSibling) {
        if (VALUE_TYPES.has(item.name)) index++
      }
      path.unshift(index)
    }
  }
  return path
}

function unquote(text) {
  try {
    return JSON.parse(text)
  } catch {
    return text.replace(/^"|"$/g, '')
  }
}

/** Every plain alternative a schema stands for: references followed, oneOf/anyOf/allOf and if-then opened. */
function alternatives(schema, root, depth = 0) {
  if (!schema || typeof schema !== 'object' || depth > 12) return []
  if (schema.$ref) {
    const name = schema.$ref.replace('#/$defs/', '')
    return [...alternatives(root.$defs?.[name], root, depth + 1), ...alternatives({ ...schema, $ref: undefined }, root, depth + 1)]
  }
  const found = [schema]
  for (const group of ['oneOf', 'anyOf', 'allOf']) {
    for (const part of schema[group] || []) found.push(...alternatives(part, root, depth + 1))
  }
  if (schema.then) found.push(...alternatives(schema.then, root, depth + 1))
  return found
}

function step(candidates, segment, root) {
  const next = []
  for (const schema of candidates) {
    if (typeof segment === 'number') {
      if (schema.items) next.push(...alternatives(schema.items, root))
    } else if (schema.properties?.[segment]) {
      next.push(...alternatives(schema.properties[segment], root))
    } else if (schema.additionalProperties && typeof schema.additionalProperties === 'object') {
      next.push(...alternatives(schema.additionalProperties, root))
    }
  }
  return next
}

function schemasAt(root, path) {
  let candidates = alternatives(root, root)
  for (const segment of path) candidates = step(candidates, segment, root)
  return candidates
}

function keyOptions(candidates) {
  const options = new Map()
  for (const schema of candidates) {
    for (const [key, property] of Object.entries(schema.properties || {})) {
      if (!options.has(key)) options.set(key, { label: `"${key}"`, type: 'property', info: property.description })
    }
  }
  return [...options.values()]
}

function valueOptions(candidates) {
  const values = new Map()
  for (const schema of candidates) {
    for (const value of [...(schema.enum || []), ...('const' in schema ? [schema.const] : [])]) {
      values.set(JSON.stringify(value), { label: JSON.stringify(value), type: 'constant' })
    }
    if (schema.type === 'boolean') for (const value of ['true', 'false']) values.set(value, { label: value, type: 'constant' })
  }
  return [...values.values()]
}

function fallback(kind, isValue) {
  const words = isValue ? WORDS.values : WORDS[kind] || WORDS.ruleset
  return words.map((word) => ({ label: `"${word}"`, type: isValue ? 'constant' : 'property' }))
}

/** A CodeMirror completion source for documents of `kind` (`ruleset`, `journey`). */
export function schemaCompletion(kind) {
  return async (context) => {
    const word = context.matchBefore(/"?[\w=!<>.-]*/)
    if ((!word || word.from === word.to) && !context.explicit) return null
    const from = word ? word.from : context.pos
    const before = context.state.sliceDoc(Math.max(0, from - 200), from)
    const isValue = /:\s*$/.test(before)
    const schema = await languageSchema(kind)
    let options
    if (!schema) {
      options = fallback(kind, isValue)
    } else {
      // The innermost object around the cursor: the one a key is typed in, or the one holding the property
      // given a value (its name read from the text: an unterminated string leaves no Property node).
      let node = syntaxTree(context.state).resolveInner(from, 1)
      while (node && node.name !== 'Object') node = node.parent
      if (!node) return null
      const path = pathOf(context.state, node)
      if (isValue) {
        const key = /"((?:[^"\\]|\\.)*)"\s*:\s*$/.exec(before)
        if (!key) return null
        options = valueOptions(schemasAt(schema, [...path, unquote(`"${key[1]}"`)]))
      } else {
        options = keyOptions(schemasAt(schema, path))
      }
    }
    if (!options.length) return null
    // A closing quote typed for us already (closeBrackets) is replaced with the rest of the word.
    const to = context.state.sliceDoc(context.pos, context.pos + 1) === '"' ? context.pos + 1 : context.pos
    return { from, to, options, validFor: /^"?[\w=!<>.-]*"?$/ }
  }
}
