// The JSON editor (CodeMirror 6): syntax errors as you type, the server's validation errors underlined at
// their JSON paths, completion from the language's JSON Schema.
import { useEffect, useRef } from 'react'
import { EditorView, basicSetup } from 'codemirror'
import { json, jsonParseLinter } from '@codemirror/lang-json'
import { forceLinting, linter, lintGutter } from '@codemirror/lint'
import { autocompletion } from '@codemirror/autocomplete'
import { locate } from './jsonPaths.js'
import { schemaCompletion } from './schemaCompletion.js'

export function JsonEditor({ value, onChange, serverErrors = [], kind = 'ruleset', label, height = '420px' }) {
  const parent = useRef(null)
  const view = useRef(null)
  const errors = useRef(serverErrors)
  const changed = useRef(onChange)
  changed.current = onChange

  useEffect(() => {
    const parseErrors = jsonParseLinter()
    const diagnostics = (editor) => {
      const text = editor.state.doc.toString()
      const found = parseErrors(editor)
      if (found.length) return found
      return errors.current.map((error) => {
        const range = locate(text, error.path)
        return {
          from: range.from,
          to: Math.max(range.to, range.from + 1),
          severity: 'error',
          source: 'server',
          message: `${error.path || 'document'}: ${error.message}`,
        }
      })
    }
    view.current = new EditorView({
      doc: value,
      parent: parent.current,
      extensions: [
        basicSetup,
        json(),
        lintGutter(),
        linter(diagnostics, { delay: 200 }),
        autocompletion({ override: [schemaCompletion(kind)] }),
        EditorView.contentAttributes.of({ 'aria-label': label }),
        EditorView.theme({ '&': { height }, '.cm-scroller': { overflow: 'auto' } }),
        EditorView.updateListener.of((update) => {
          if (update.docChanged) changed.current?.(update.state.doc.toString())
        }),
      ],
    })
    return () => view.current.destroy()
    // The editor is made once per document; later `value`s come from typing, not from the parent.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [])

  useEffect(() => {
    errors.current = serverErrors
    if (view.current) forceLinting(view.current)
  }, [serverErrors])

  return <div className="editor" ref={parent} />
}

