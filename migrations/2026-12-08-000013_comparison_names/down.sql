ALTER TABLE alert_rules DROP CONSTRAINT alert_rules_comparison;
UPDATE alert_rules SET comparison = CASE comparison
    WHEN 'greater_than' THEN 'gt'
    WHEN 'greater_or_equal' THEN 'ge'
    WHEN 'less_than' THEN 'lt'
    WHEN 'less_or_equal' THEN 'le'
    ELSE comparison END;
ALTER TABLE alert_rules ADD CONSTRAINT alert_rules_comparison CHECK (comparison IN ('gt', 'ge', 'lt', 'le'));
COMMENT ON COLUMN alert_rules.comparison IS 'How the value is compared with the threshold: gt, ge, lt or le.';
