// @generated automatically by Diesel CLI.

diesel::table! {
    /// Every notification, stored before it is delivered; WatchAlerts replays it by id. Append-only; kept when its rule is deleted.
    alert_notifications (notification_id) {
        /// AlertNotification.id: strictly increasing in commit order (inserts are serialised by an advisory lock).
        notification_id -> Int8,
        /// The rule that changed state (no foreign key: history outlives deleted rules).
        rule_id -> Uuid,
        /// The rule's name at the time of the notification.
        rule_name -> Text,
        /// firing or resolved.
        state -> Text,
        /// The metric value that caused the transition (for a resolution caused by editing, disabling or deleting the rule: the last value evaluated).
        value -> Float8,
        /// The rule's threshold at the time of the notification.
        threshold -> Float8,
        /// Start of the evaluated window.
        window_start -> Timestamptz,
        /// End of the evaluated window: the evaluation instant.
        window_end -> Timestamptz,
        /// When the alert started firing: the same for a FIRING and the RESOLVED that ends it.
        fired_at -> Timestamptz,
        /// When the row was committed (database clock).
        created_at -> Timestamptz,
    }
}

diesel::table! {
    /// Alert rules managed through AlertService: a metric over a sliding window compared with a threshold.
    alert_rules (rule_id) {
        /// The rule id returned to clients (AlertRule.id), assigned by the server (UUIDv7, so ids sort by creation).
        rule_id -> Uuid,
        /// A name for people, copied into every notification.
        name -> Text,
        /// The metric measured: events, unique_users, pageviews, purchases, revenue or quantity (as in GetMetrics).
        metric -> Text,
        /// Filter.event_types: keep only events of these types; empty keeps all.
        filter_event_types -> Array<Nullable<Text>>,
        /// Filter.page_url: keep only pageviews of this URL; NULL does not filter.
        filter_page_url -> Nullable<Text>,
        /// Filter.product_id: keep only purchases of this product; NULL does not filter.
        filter_product_id -> Nullable<Text>,
        /// Filter.user_id: keep only events of this user (the client's id); NULL does not filter.
        filter_user_id -> Nullable<Text>,
        /// The metric is computed over the sliding window [now - window_seconds, now).
        window_seconds -> Int4,
        /// How the value is compared with the threshold: a name of Comparison in src/domain/alert.rs (greater_than, ...).
        comparison -> Text,
        /// The value the metric is compared with; always finite.
        threshold -> Float8,
        /// How long the condition must hold (pending) before the rule fires; 0 fires at once.
        for_seconds -> Int4,
        /// Disabled rules are not evaluated; disabling a firing rule resolves it.
        enabled -> Bool,
        /// Bumped by every update that changes how the rule evaluates; a state row of another revision is reset by the evaluator.
        revision -> Int8,
        /// When the rule was created.
        created_at -> Timestamptz,
        /// When the rule was last updated.
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// The evaluator's state of each rule, written only when it changes, so a restart or a new evaluating instance neither re-fires nor forgets an alert.
    alert_states (rule_id) {
        /// The rule (alert_rules.rule_id); the row may outlive a deleted rule until the evaluator resolves it.
        rule_id -> Uuid,
        /// The alert_rules.revision this state belongs to.
        revision -> Int8,
        /// inactive, pending (the condition holds, for_seconds not yet elapsed) or firing.
        state -> Text,
        /// When the rule entered this state (evaluator clock); for a firing rule, when it fired.
        since -> Timestamptz,
        /// Incremented by every write; writers compare-and-set on it, so two evaluators can never both apply a transition.
        seq -> Int8,
        /// The rule's name when the state was written, for the RESOLVED of a rule deleted meanwhile.
        rule_name -> Text,
        /// The threshold when the state was written.
        threshold -> Float8,
        /// The metric value of the evaluation that caused the state.
        value -> Float8,
        /// Start of the window of that evaluation.
        window_start -> Timestamptz,
        /// End of the window of that evaluation (the evaluation instant).
        window_end -> Timestamptz,
    }
}

diesel::table! {
    /// API keys clients send as `authorization: Bearer <key>`; managed with `pulse keys create|list|revoke`.
    api_keys (id) {
        /// The key id shown by `pulse keys list` and taken by `pulse keys revoke` (UUIDv7, so ids sort by creation); not secret.
        id -> Uuid,
        /// A name for people (who or what holds the key).
        name -> Text,
        /// What the key may call: ingest (IngestService), query (QueryService and the dashboard API) or admin (everything).
        scope -> Text,
        /// SHA-256 of the whole key string; the key itself is never stored.
        key_hash -> Bytea,
        /// When the key was created.
        created_at -> Timestamptz,
        /// When a server last accepted the key, updated at most once a minute per key and instance; NULL if never used.
        last_used_at -> Nullable<Timestamptz>,
        /// When the key was revoked; a revoked key is refused by every instance within seconds. NULL while the key is valid.
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Dictionary of the values of each rollup dimension (page URLs, product ids), so rollup rows carry a 4-byte id instead of the string. Rows are never deleted or changed, so a cached id is always valid.
    dimension_values (value_id) {
        /// The id rollup rows and deltas store; unique across dimensions.
        value_id -> Int4,
        /// Which dimension: 1 page_url, 2 product_id (the codes of domain::metric::Dimension).
        dimension -> Int2,
        /// The value as sent by clients.
        value -> Text,
    }
}

diesel::table! {
    /// Lookup of event type names, registered on first sight, so events store a 2-byte id.
    event_types (event_type_id) {
        /// Surrogate key stored in events.event_type_id: 1 to 32767, the lowest free id given by Pulse under an advisory lock (0 means any type in rollup_user_sets).
        event_type_id -> Int2,
        /// The event type as sent by clients: click, purchase, sign_up, pageview, ...
        name -> Text,
    }
}

diesel::table! {
    /// One row per accepted event: the raw fact table. Rollups outlive it (retention deletes old rows).
    events (event_id) {
        /// The client-chosen UUID; primary key and idempotency key (a resent id is a duplicate).
        event_id -> Uuid,
        /// When the event happened (UTC), after client clock-skew correction.
        timestamp -> Timestamptz,
        /// The user (users.user_id); NULL for an anonymous event.
        user_id -> Nullable<Int8>,
        /// The event type (event_types.event_type_id).
        event_type_id -> Int2,
        /// Free-form properties sent by the client (Event.data); NULL when none were sent.
        data -> Nullable<Jsonb>,
    }
}

diesel::table! {
    /// The detail of each pageview event (exactly one row per event of type pageview).
    pageviews (pageview_id) {
        /// Surrogate key, increasing in insertion order.
        pageview_id -> Int8,
        /// The pageview event; deleting the event deletes this row.
        event_id -> Uuid,
        /// The viewing user, as in events.user_id (required by the data model); NULL when anonymous.
        user_id -> Nullable<Int8>,
        /// The page viewed, as sent by the client.
        page_url -> Text,
    }
}

diesel::table! {
    /// The detail of each purchase event (exactly one row per event of type purchase).
    purchases (purchase_id) {
        /// Surrogate key, increasing in insertion order.
        purchase_id -> Int8,
        /// The purchase event; deleting the event deletes this row.
        event_id -> Uuid,
        /// The buying user, as in events.user_id (required by the data model); NULL when anonymous.
        user_id -> Nullable<Int8>,
        /// The client's product id.
        product_id -> Text,
        /// Units bought, at least 1.
        quantity -> Int4,
        /// Money paid, exact decimal with at most 4 fractional digits; never floating point.
        amount -> Numeric,
    }
}

diesel::table! {
    /// Pageviews per page and purchases per product per minute, of raw events deleted by retention (read with raw events for minutes older than the minute horizon).
    retired_counts (dimension, minute, value_id, event_type_id) {
        /// 1: pageviews by page; 2: purchases by product.
        dimension -> Int2,
        /// Start of the minute (UTC) the deleted events fell in.
        minute -> Timestamptz,
        /// The page or product (dimension_values.value_id).
        value_id -> Int4,
        /// The event type (event_types.event_type_id).
        event_type_id -> Int2,
        /// Number of deleted events.
        events -> Int8,
        /// Sum of purchased quantities (0 for pageviews).
        quantity -> Int8,
        /// Sum of purchase amounts, exact (0 for pageviews).
        revenue -> Numeric,
    }
}

diesel::table! {
    /// The users behind retired_counts: one row per (minute, page or product, type, user) of raw events deleted by retention.
    retired_users (dimension, minute, value_id, event_type_id, user_id) {
        /// 1: pageviews by page; 2: purchases by product.
        dimension -> Int2,
        /// Start of the minute (UTC) the deleted events fell in.
        minute -> Timestamptz,
        /// The page or product (dimension_values.value_id).
        value_id -> Int4,
        /// The event type (event_types.event_type_id).
        event_type_id -> Int2,
        /// A user with at least one deleted event there (users.user_id).
        user_id -> Int8,
    }
}

diesel::table! {
    /// Events, purchased quantity and revenue per bucket, dimension value and event type (a rollup of events, pageviews and purchases). fillfactor 70: the rows of the current hour and day are updated by every fold and stay HOT.
    rollup_counts (resolution, dimension, bucket, value_id, event_type_id) {
        /// Bucket width in seconds: 60, 3600 or 86400.
        resolution -> Int4,
        /// 0: every event (value_id 0); 1: pageviews by page; 2: purchases by product.
        dimension -> Int2,
        /// Start of the bucket, aligned to the resolution in UTC.
        bucket -> Timestamptz,
        /// The dimension value (dimension_values.value_id); 0 for dimension 0.
        value_id -> Int4,
        /// The event type (event_types.event_type_id).
        event_type_id -> Int2,
        /// Number of events.
        events -> Int8,
        /// Sum of purchased quantities (0 but for purchases).
        quantity -> Int8,
        /// Sum of purchase amounts, exact (0 but for purchases).
        revenue -> Numeric,
    }
}

diesel::table! {
    /// What each fold (generation) changed: query caches keep every cached bucket that no later fold touched. Old rows are pruned; a cache that finds its generation pruned starts over.
    rollup_folds (generation) {
        /// The rollup_state.fold_generation this fold created.
        generation -> Int8,
        /// When the fold committed (database clock).
        folded_at -> Timestamptz,
        /// True when every bucket may have changed (a rebuild).
        everything -> Bool,
        /// The distinct minutes whose rollups changed, when few; empty when only hours are known.
        minutes -> Array<Nullable<Timestamptz>>,
        /// The distinct hours whose rollups (minute, hour or day rows) changed.
        hours -> Array<Nullable<Timestamptz>>,
    }
}

diesel::table! {
    /// The exact set of users active per bucket, dimension value and event type, as a serialized Roaring bitmap of users.user_id: unions give exact unique users over any range.
    rollup_sets (resolution, dimension, bucket, value_id, event_type_id) {
        /// Bucket width in seconds: 60, 3600 or 86400.
        resolution -> Int4,
        /// 0: every event (value_id 0); 1: pageviews by page; 2: purchases by product.
        dimension -> Int2,
        /// Start of the bucket, aligned to the resolution in UTC.
        bucket -> Timestamptz,
        /// The dimension value (dimension_values.value_id); 0 for dimension 0.
        value_id -> Int4,
        /// The event type, or 0 for events of any type (dimension 0 only).
        event_type_id -> Int2,
        /// RoaringTreemap (portable serialization) of users.user_id.
        users -> Bytea,
        /// Number of users in the set.
        cardinality -> Int8,
    }
}

diesel::table! {
    /// One row: the state of the rollup tables as a whole.
    rollup_state (singleton) {
        /// Always true: the table holds one row.
        singleton -> Bool,
        /// Incremented by every fold that changed a rollup table; the query cache keys on it.
        fold_generation -> Int8,
        /// Minute rows of dimensions other than 0 are written only for minutes at most this old when folded (26 h: the dashboard's 24-hour view stays on stored minutes); older minutes are read from raw events.
        dimension_minute_seconds -> Int4,
    }
}

diesel::table! {
    /// Users seen in events or registered by UpsertUsers. Rows are never deleted, so events keep their user.
    users (user_id) {
        /// Internal surrogate key (the entity's user_id): fact tables store this 8-byte integer, not the client's string.
        user_id -> Int8,
        /// The client's user id as sent in Event.user_id and User.user_id (the API's user_id).
        external_id -> Text,
        /// Filled in by UpsertUsers; NULL until then.
        username -> Nullable<Text>,
        /// Filled in by UpsertUsers; NULL until then.
        email -> Nullable<Text>,
        /// When Pulse first saw the user.
        created_at -> Timestamptz,
    }
}

diesel::joinable!(events -> event_types (event_type_id));
diesel::joinable!(events -> users (user_id));
diesel::joinable!(pageviews -> events (event_id));
diesel::joinable!(pageviews -> users (user_id));
diesel::joinable!(purchases -> events (event_id));
diesel::joinable!(purchases -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    alert_notifications,
    alert_rules,
    alert_states,
    api_keys,
    dimension_values,
    event_types,
    events,
    pageviews,
    purchases,
    retired_counts,
    retired_users,
    rollup_counts,
    rollup_folds,
    rollup_sets,
    rollup_state,
    users,
);
