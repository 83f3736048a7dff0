-- A comparison is stored under the one name every interface uses
-- (greater_than, greater_or_equal, less_than, less_or_equal), no longer
-- under a short form of its own.
ALTER TABLE alert_rules DROP CONSTRAINT alert_rules_comparison;
UPDATE alert_rules SET comparison = CASE comparison
    WHEN 'gt' THEN 'greater_than'
    WHEN 'ge' THEN 'greater_or_equal'
    WHEN 'lt' THEN 'less_than'
    WHEN 'le' THEN 'less_or_equal'
    ELSE comparison END;
ALTER TABLE alert_rules ADD CONSTRAINT alert_rules_comparison
    CHECK (comparison IN ('greater_than', 'greater_or_equal', 'less_than', 'less_or_equal'));
COMMENT ON COLUMN alert_rules.comparison IS 'How the value is compared with the threshold: a name of Comparison in src/domain/alert.rs (greater_than, ...).';
