-- 企业登记月度统计 (enterprise_registrations_monthly): enterprises established per month (established_on, YYYY-MM),
-- registration district and GB/T 4754-2017 门类. An enterprise's industry_code is a 大类 (two digits) whose parent
-- in the industry code list is its 门类 letter (a 门类 code stands for itself). An enterprise without a
-- known 门类 or establishment date is counted under a null key, which the gate quarantines (required columns):
-- reported, never dropped silently. Small counts are suppressed by the open release (deid suppress, k ≥ 5).
SELECT
    strftime(e.established_on, '%Y-%m') AS registration_month,
    e.enterprise_district_code,
    CASE WHEN coalesce(c.parent, '') = '' THEN c.code ELSE c.parent END AS industry_section,
    count(*) AS registrations
FROM std_enterprise AS e
LEFT JOIN code_list_industry AS c ON c.code = e.industry_code
GROUP BY ALL
