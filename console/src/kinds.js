// The two kinds of document the console edits, and where the API keeps them.
export const KINDS = {
  ruleset: {
    title: 'Rulesets',
    noun: 'ruleset',
    route: 'rulesets',
    list: '/v1/rulesets',
    listKey: 'rulesets',
    base: '/v1/rulesets',
    validate: '/v1/rulesets:validate',
    countField: 'rules',
    template: {
      description: 'What this ruleset does',
      rules: [{ id: 'my-rule', when: { event: 'pay' }, then: [{ action: 'tag', add: ['payer'] }] }],
    },
  },
  journey: {
    title: 'Journeys',
    noun: 'journey',
    route: 'journeys',
    list: '/v1/journeys',
    listKey: 'journeys',
    base: '/v1/journeys',
    validate: '/v1/journeys:validate',
    countField: 'nodes',
    template: {
      description: 'What this journey does',
      entry: { event: 'add_to_cart' },
      start: 'wait',
      nodes: { wait: { wait: '30m', next: 'remind' }, remind: { do: [{ action: 'tag', add: ['reminded'] }] } },
    },
  },
}
