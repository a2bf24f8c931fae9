// Display helpers shared by the pages.
export function time(ms) {
  if (ms === null || ms === undefined || ms === '') return ''
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z')
}

export function percent(value) {
  return value === null || value === undefined ? '–' : `${(value * 100).toFixed(1)} %`
}

export function json(value) {
  return JSON.stringify(value, null, 2)
}
