// Words the editor completes: the field names, operators and action types of the ruleset and journey
// languages (README, "Ruleset language"; docs/journeys.md). Kept short on purpose: the server's validation
// is the authority, this only saves typing.
const PREDICATE = ['field', 'profile', 'tag', 'op', 'value', 'all', 'any', 'not', 'did', 'did_not', 'within']
const ACTION = ['action', 'coupon_id', 'quantity', 'params', 'amount', 'reason', 'add', 'remove', 'channel',
  'template', 'url', 'page', 'miniprogram', 'transactional', 'body', 'headers', 'notify_superior', 'delay']
const RULE = ['id', 'description', 'fatigue', 'max', 'per', 'rules', 'when', 'if', 'then', 'reentry', 'policy',
  'period', 'priority', 'lateness', 'goal', 'event', 'where', 'sequence', 'first', 'absence', 'missing',
  'correlate', 'threshold', 'match', 'count', 'sum', 'at_least', 'window']
const JOURNEY = ['id', 'description', 'entry', 'segment', 'key', 'reentry', 'policy', 'period', 'exit', 'goal',
  'start', 'nodes', 'tz', 'lateness', 'do', 'wait', 'until', 'until_profile', 'wait_for', 'timeout',
  'on_timeout', 'branch', 'else', 'split', 'weight', 'holdout', 'salt', 'next', 'if', 'event', 'where']
const VALUES = ['==', '!=', '>', '>=', '<', '<=', 'in', 'not_in', 'contains', 'prefix', 'exists', 'coupon',
  'points', 'tag', 'message', 'webhook', 'notify_staff', 'always', 'once', 'once_per', 'sms', 'wechat_template',
  'wechat_cs', 'miniprogram_subscribe', 'wecom']

export const WORDS = {
  ruleset: [...new Set([...RULE, ...PREDICATE, ...ACTION])],
  journey: [...new Set([...JOURNEY, ...PREDICATE, ...ACTION])],
  values: VALUES,
}
