-- 公交线路日客流 (bus_ridership_daily): boardings per line and day, summed over stops and hours. This aggregate is
-- how bus ridership may be opened (std.bus_ridership: 有条件开放, 按线路和日期汇总后开放); small counts are
-- suppressed by the open release (deid suppress, k ≥ 5). The line name comes from its authority, std.bus_route.
SELECT
    r.bus_line_id,
    l.bus_line_name,
    r.ridership_date,
    CAST(sum(r.boardings) AS BIGINT) AS boardings
FROM std_bus_ridership AS r
LEFT JOIN std_bus_route AS l ON l.bus_line_id = r.bus_line_id
GROUP BY r.bus_line_id, l.bus_line_name, r.ridership_date
