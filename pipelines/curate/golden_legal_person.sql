-- 法人黄金记录 (golden_legal_person): one row per legal person any input knows, assembled field by field. Each
-- field takes the value of its data element's authoritative source (schemas/standards/elements.yml); only where
-- that value is null does it take the latest non-null copy (by extraction time). field_provenance says, per
-- field, which system, table and snapshot the value came from and whether that source is the authority.
--   std.enterprise (enterprise.enterprise): authority of uscc, enterprise_name, legal_representative, capital,
--     established_on, district, industry_code, status
--   std.credit_record (credit.credit_record): authority of credit_record_type (the three counts); copies of uscc
--     and enterprise_name
-- provenance(dataset, column) is the runner's macro (see golden_resident.sql).
-- 个体工商户 are not 法人单位 and their 字号 often holds the owner's name: a USCC starting "92" (registration
-- authority 9 工商, organisation type 2 个体工商户, GB 32100-2015) is left out, from every input.
WITH credit AS (
    SELECT uscc,
           count(*) FILTER (WHERE credit_record_type = 'R') AS credit_red_count,
           count(*) FILTER (WHERE credit_record_type = 'B') AS credit_black_count,
           count(*) FILTER (WHERE credit_record_type = 'W') AS credit_watch_count
    FROM std_credit_record
    WHERE uscc IS NOT NULL
    GROUP BY uscc
),
name_copy AS (
    SELECT uscc, enterprise_name FROM std_credit_record
    WHERE uscc IS NOT NULL AND enterprise_name IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY uscc ORDER BY _extracted_at DESC, enterprise_name) = 1
),
legal_persons AS (
    SELECT uscc FROM (SELECT uscc FROM std_enterprise WHERE uscc IS NOT NULL UNION SELECT uscc FROM credit)
    WHERE NOT starts_with(uscc, '92')
)
SELECT
    l.uscc,
    coalesce(e.enterprise_name, n.enterprise_name) AS enterprise_name,
    e.legal_representative,
    e.registered_capital,
    e.established_on,
    e.enterprise_district_code,
    e.industry_code,
    e.enterprise_status,
    coalesce(c.credit_red_count, 0) AS credit_red_count,
    coalesce(c.credit_black_count, 0) AS credit_black_count,
    coalesce(c.credit_watch_count, 0) AS credit_watch_count,
    to_json({
        'uscc': CASE WHEN e.uscc IS NOT NULL THEN provenance('enterprise', 'uscc')
                     ELSE provenance('credit_record', 'uscc') END,
        'enterprise_name': CASE WHEN e.enterprise_name IS NOT NULL THEN provenance('enterprise', 'enterprise_name')
                                WHEN n.enterprise_name IS NOT NULL THEN provenance('credit_record', 'enterprise_name')
                                WHEN e.uscc IS NOT NULL THEN provenance('enterprise', 'enterprise_name') END,
        'legal_representative': CASE WHEN e.uscc IS NOT NULL THEN provenance('enterprise', 'legal_representative') END,
        'registered_capital': CASE WHEN e.uscc IS NOT NULL THEN provenance('enterprise', 'registered_capital') END,
        'established_on': CASE WHEN e.uscc IS NOT NULL THEN provenance('enterprise', 'established_on') END,
        'enterprise_district_code': CASE WHEN e.uscc IS NOT NULL
                                         THEN provenance('enterprise', 'enterprise_district_code') END,
        'industry_code': CASE WHEN e.uscc IS NOT NULL THEN provenance('enterprise', 'industry_code') END,
        'enterprise_status': CASE WHEN e.uscc IS NOT NULL THEN provenance('enterprise', 'enterprise_status') END,
        -- counted from the authority of the record type: zero records is its answer too
        'credit_red_count': provenance('credit_record', 'credit_record_type'),
        'credit_black_count': provenance('credit_record', 'credit_record_type'),
        'credit_watch_count': provenance('credit_record', 'credit_record_type')
    })::VARCHAR AS field_provenance
FROM legal_persons AS l
LEFT JOIN std_enterprise AS e ON e.uscc = l.uscc
LEFT JOIN name_copy AS n ON n.uscc = l.uscc
LEFT JOIN credit AS c ON c.uscc = l.uscc
