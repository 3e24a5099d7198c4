-- 居民黄金记录 (golden_resident): one row per resident any input knows, assembled field by field. Each field takes
-- the value of its data element's authoritative source (schemas/standards/elements.yml); only where that value
-- is null does it take the latest non-null copy (by extraction time). field_provenance says, per field, which
-- system, table and snapshot the value came from and whether that source is the element's authority.
--   std.person (population.person): authority of resident_id, person_name, sex_code, birth_date, residence
--     district and address, mobile_phone
--   std.insured (social_insurance.insured), std.housing_fund_account (housing_fund.account): copies of resident_id
--     and person_name only. Their own items (insurance types, fund accounts) are 有条件共享 and stay out of this
--     无条件共享 dataset.
-- provenance(dataset, column) is the runner's macro: the std column's system, table, input snapshot and whether
-- it is its element's authoritative source.
WITH copies AS (
    SELECT resident_id, person_name, _extracted_at, 'insured' AS dataset FROM std_insured
    WHERE resident_id IS NOT NULL
    UNION ALL
    SELECT resident_id, person_name, _extracted_at, 'housing_fund_account' AS dataset FROM std_housing_fund_account
    WHERE resident_id IS NOT NULL
),
name_copy AS (
    SELECT resident_id, person_name, dataset FROM copies
    WHERE person_name IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY resident_id ORDER BY _extracted_at DESC, dataset, person_name) = 1
),
key_copy AS (
    -- the copy that knows a resident the population registry does not (its latest extraction)
    SELECT resident_id, dataset FROM copies
    QUALIFY row_number() OVER (PARTITION BY resident_id ORDER BY _extracted_at DESC, dataset) = 1
),
residents AS (
    SELECT resident_id FROM std_person WHERE resident_id IS NOT NULL
    UNION
    SELECT resident_id FROM key_copy
)
SELECT
    r.resident_id,
    coalesce(p.person_name, n.person_name) AS person_name,
    p.sex_code,
    p.birth_date,
    p.residence_district_code,
    p.residence_address,
    p.mobile_phone,
    to_json({
        'resident_id': CASE WHEN p.resident_id IS NOT NULL THEN provenance('person', 'resident_id')
                            WHEN k.dataset = 'insured' THEN provenance('insured', 'resident_id')
                            ELSE provenance('housing_fund_account', 'resident_id') END,
        'person_name': CASE WHEN p.person_name IS NOT NULL THEN provenance('person', 'person_name')
                            WHEN n.dataset = 'insured' THEN provenance('insured', 'person_name')
                            WHEN n.dataset = 'housing_fund_account' THEN provenance('housing_fund_account', 'person_name')
                            WHEN p.resident_id IS NOT NULL THEN provenance('person', 'person_name') END,
        'sex_code': CASE WHEN p.resident_id IS NOT NULL THEN provenance('person', 'sex_code') END,
        'birth_date': CASE WHEN p.resident_id IS NOT NULL THEN provenance('person', 'birth_date') END,
        'residence_district_code': CASE WHEN p.resident_id IS NOT NULL
                                        THEN provenance('person', 'residence_district_code') END,
        'residence_address': CASE WHEN p.resident_id IS NOT NULL THEN provenance('person', 'residence_address') END,
        'mobile_phone': CASE WHEN p.resident_id IS NOT NULL THEN provenance('person', 'mobile_phone') END
    })::VARCHAR AS field_provenance
FROM residents AS r
LEFT JOIN std_person AS p ON p.resident_id = r.resident_id
LEFT JOIN name_copy AS n ON n.resident_id = r.resident_id
LEFT JOIN key_copy AS k ON k.resident_id = r.resident_id
