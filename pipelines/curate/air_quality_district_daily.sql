-- 空气质量区县日报 (air_quality_district_daily): per district and day, the mean of its stations' valid 24-hour
-- means (stations with at least 20 hourly values; ``stations`` counts them) and the AQI per HJ 633-2012 computed
-- from the district's mean concentrations, as a city's AQI is, not as a mean of station AQIs.
-- Stations the registry places in no district cannot be rolled up and are left out (air_quality_daily's gate
-- reports them: station_district_code is required there).
WITH district AS (
    SELECT station_district_code, observed_date,
           count(*) FILTER (WHERE pm25_24h IS NOT NULL OR pm10_24h IS NOT NULL) AS stations,
           round(avg(pm25_24h), 1) AS pm25_24h,
           round(avg(pm10_24h), 1) AS pm10_24h
    FROM curated_air_quality_daily
    WHERE station_district_code IS NOT NULL AND observed_date IS NOT NULL
    GROUP BY station_district_code, observed_date
    -- a district-day none of whose stations has a valid daily mean has no figure to publish
    HAVING count(*) FILTER (WHERE pm25_24h IS NOT NULL OR pm10_24h IS NOT NULL) > 0
),
indexed AS (
    SELECT *, hj633_aqi(pm25_24h, pm10_24h, NULL, NULL, NULL, NULL, NULL) AS aqi FROM district
)
SELECT
    station_district_code,
    observed_date,
    stations,
    pm25_24h,
    pm10_24h,
    aqi.aqi AS aqi_daily,
    aqi.level AS aqi_level,
    aqi.category AS aqi_category,
    aqi.primary_pollutant AS primary_pollutant
FROM indexed
