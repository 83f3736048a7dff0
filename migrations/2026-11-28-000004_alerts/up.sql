-- Alerting: rules, the evaluator's per-rule state, and the notification log.
--
-- How the three tables work together (see ARCHITECTURE.md "Alerts"):
--   * alert_rules is what clients manage through AlertService; every change
--     that affects evaluation bumps `revision`.
--   * alert_states is written by the evaluator only, and only when a rule
--     changes state. A transition into FIRING or out of it updates the state
--     row (compare-and-set on `seq`) and inserts its notification in the same
--     transaction, so a crash can neither lose nor repeat a notification.
--   * alert_notifications is an append-only log. Writers take a
--     transaction-scoped advisory lock before inserting, so ids are assigned
--     and committed in the same order: a reader that has seen id N will never
--     later see a new row with an id below N. WatchAlerts relies on this.

CREATE TABLE alert_rules (
    rule_id uuid PRIMARY KEY,
    name text NOT NULL,
    metric text NOT NULL,
    filter_event_types text[] NOT NULL DEFAULT '{}',
    filter_page_url text,
    filter_product_id text,
    filter_user_id text,
    window_seconds integer NOT NULL,
    comparison text NOT NULL,
    threshold double precision NOT NULL,
    for_seconds integer NOT NULL,
    enabled boolean NOT NULL,
    revision bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_rules_name_length CHECK (octet_length(name) BETWEEN 1 AND 200),
    CONSTRAINT alert_rules_metric CHECK (metric IN ('events', 'unique_users', 'pageviews', 'purchases', 'revenue', 'quantity')),
    CONSTRAINT alert_rules_event_types_not_null CHECK (array_position(filter_event_types, NULL) IS NULL),
    CONSTRAINT alert_rules_window CHECK (window_seconds > 0),
    CONSTRAINT alert_rules_comparison CHECK (comparison IN ('gt', 'ge', 'lt', 'le')),
    CONSTRAINT alert_rules_threshold_finite CHECK (threshold NOT IN ('NaN', 'Infinity', '-Infinity')),
    CONSTRAINT alert_rules_for CHECK (for_seconds >= 0)
);
COMMENT ON TABLE alert_rules IS 'Alert rules managed through AlertService: a metric over a sliding window compared with a threshold.';
COMMENT ON COLUMN alert_rules.rule_id IS 'The rule id returned to clients (AlertRule.id), assigned by the server (UUIDv7, so ids sort by creation).';
COMMENT ON COLUMN alert_rules.name IS 'A name for people, copied into every notification.';
COMMENT ON COLUMN alert_rules.metric IS 'The metric measured: events, unique_users, pageviews, purchases, revenue or quantity (as in GetMetrics).';
COMMENT ON COLUMN alert_rules.filter_event_types IS 'Filter.event_types: keep only events of these types; empty keeps all.';
COMMENT ON COLUMN alert_rules.filter_page_url IS 'Filter.page_url: keep only pageviews of this URL; NULL does not filter.';
COMMENT ON COLUMN alert_rules.filter_product_id IS 'Filter.product_id: keep only purchases of this product; NULL does not filter.';
COMMENT ON COLUMN alert_rules.filter_user_id IS 'Filter.user_id: keep only events of this user (the client''s id); NULL does not filter.';
COMMENT ON COLUMN alert_rules.window_seconds IS 'The metric is computed over the sliding window [now - window_seconds, now).';
COMMENT ON COLUMN alert_rules.comparison IS 'How the value is compared with the threshold: gt, ge, lt or le.';
COMMENT ON COLUMN alert_rules.threshold IS 'The value the metric is compared with; always finite.';
COMMENT ON COLUMN alert_rules.for_seconds IS 'How long the condition must hold (pending) before the rule fires; 0 fires at once.';
COMMENT ON COLUMN alert_rules.enabled IS 'Disabled rules are not evaluated; disabling a firing rule resolves it.';
COMMENT ON COLUMN alert_rules.revision IS 'Bumped by every update that changes how the rule evaluates; a state row of another revision is reset by the evaluator.';
COMMENT ON COLUMN alert_rules.created_at IS 'When the rule was created.';
COMMENT ON COLUMN alert_rules.updated_at IS 'When the rule was last updated.';

-- No foreign key to alert_rules: the state of a deleted rule must outlive it
-- until the evaluator has resolved a firing alert and removed the row.
CREATE TABLE alert_states (
    rule_id uuid PRIMARY KEY,
    revision bigint NOT NULL,
    state text NOT NULL,
    since timestamptz NOT NULL,
    seq bigint NOT NULL DEFAULT 1,
    rule_name text NOT NULL,
    threshold double precision NOT NULL,
    value double precision NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    CONSTRAINT alert_states_state CHECK (state IN ('inactive', 'pending', 'firing'))
);
COMMENT ON TABLE alert_states IS 'The evaluator''s state of each rule, written only when it changes, so a restart or a new evaluating instance neither re-fires nor forgets an alert.';
COMMENT ON COLUMN alert_states.rule_id IS 'The rule (alert_rules.rule_id); the row may outlive a deleted rule until the evaluator resolves it.';
COMMENT ON COLUMN alert_states.revision IS 'The alert_rules.revision this state belongs to.';
COMMENT ON COLUMN alert_states.state IS 'inactive, pending (the condition holds, for_seconds not yet elapsed) or firing.';
COMMENT ON COLUMN alert_states.since IS 'When the rule entered this state (evaluator clock); for a firing rule, when it fired.';
COMMENT ON COLUMN alert_states.seq IS 'Incremented by every write; writers compare-and-set on it, so two evaluators can never both apply a transition.';
COMMENT ON COLUMN alert_states.rule_name IS 'The rule''s name when the state was written, for the RESOLVED of a rule deleted meanwhile.';
COMMENT ON COLUMN alert_states.threshold IS 'The threshold when the state was written.';
COMMENT ON COLUMN alert_states.value IS 'The metric value of the evaluation that caused the state.';
COMMENT ON COLUMN alert_states.window_start IS 'Start of the window of that evaluation.';
COMMENT ON COLUMN alert_states.window_end IS 'End of the window of that evaluation (the evaluation instant).';

CREATE TABLE alert_notifications (
    notification_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id uuid NOT NULL,
    rule_name text NOT NULL,
    state text NOT NULL,
    value double precision NOT NULL,
    threshold double precision NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    fired_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_notifications_state CHECK (state IN ('firing', 'resolved'))
);
COMMENT ON TABLE alert_notifications IS 'Every notification, stored before it is delivered; WatchAlerts replays it by id. Append-only; kept when its rule is deleted.';
COMMENT ON COLUMN alert_notifications.notification_id IS 'AlertNotification.id: strictly increasing in commit order (inserts are serialised by an advisory lock).';
COMMENT ON COLUMN alert_notifications.rule_id IS 'The rule that changed state (no foreign key: history outlives deleted rules).';
COMMENT ON COLUMN alert_notifications.rule_name IS 'The rule''s name at the time of the notification.';
COMMENT ON COLUMN alert_notifications.state IS 'firing or resolved.';
COMMENT ON COLUMN alert_notifications.value IS 'The metric value that caused the transition (for a resolution caused by editing, disabling or deleting the rule: the last value evaluated).';
COMMENT ON COLUMN alert_notifications.threshold IS 'The rule''s threshold at the time of the notification.';
COMMENT ON COLUMN alert_notifications.window_start IS 'Start of the evaluated window.';
COMMENT ON COLUMN alert_notifications.window_end IS 'End of the evaluated window: the evaluation instant.';
COMMENT ON COLUMN alert_notifications.fired_at IS 'When the alert started firing: the same for a FIRING and the RESOLVED that ends it.';
COMMENT ON COLUMN alert_notifications.created_at IS 'When the row was committed (database clock).';
CREATE INDEX alert_notifications_rule_id ON alert_notifications (rule_id, notification_id);
COMMENT ON INDEX alert_notifications_rule_id IS 'WatchAlerts replays filtered by rule_ids.';
