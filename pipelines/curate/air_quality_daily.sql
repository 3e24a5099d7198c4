-- 空气质量站点日报 (air_quality_daily): per station and day (Asia/Shanghai), the 24-hour means of PM2.5 and PM10
-- and the daily AQI per HJ 633-2012 computed from those means (never a mean of hourly AQIs).
-- GB 3095-2012 §7: a daily mean needs at least 20 hourly values; with fewer the mean and the AQI are null.
-- Means are rounded to 0.1 μg/m³ (the hourly values' precision) and the AQI is computed from the rounded means,
-- so that anyone recomputing it from the published figures gets the same index.
-- Station → district (parent) and coordinates (WGS-84): the station registry code list (code_lists/air_station.csv).
-- hj633_aqi(pm25_24h, pm10_24h, so2_24h, no2_24h, co_24h, o3_1h, o3_8h) is pipelines/curate/aqi.py's daily_aqi as a
-- vectorised DuckDB function; a pollutant the network does not measure is passed as NULL.
WITH hourly AS (
    SELECT station_id, station_name, observed_at, pm25, pm10,
           CAST(timezone('Asia/Shanghai', observed_at) AS DATE) AS observed_date
    FROM std_air_quality_hourly
    WHERE station_id IS NOT NULL AND observed_at IS NOT NULL
),
daily AS (
    SELECT station_id, observed_date,
           arg_max(station_name, observed_at) FILTER (WHERE station_name IS NOT NULL) AS station_name,
           count(*) FILTER (WHERE pm25 IS NOT NULL OR pm10 IS NOT NULL) AS hours_observed,
           CASE WHEN count(pm25) >= 20 THEN round(avg(pm25), 1) END AS pm25_24h,
           CASE WHEN count(pm10) >= 20 THEN round(avg(pm10), 1) END AS pm10_24h
    FROM hourly
    GROUP BY station_id, observed_date
),
indexed AS (
    SELECT *, CASE WHEN hours_observed >= 20
                   THEN hj633_aqi(pm25_24h, pm10_24h, NULL, NULL, NULL, NULL, NULL) END AS aqi
    FROM daily
)
SELECT
    d.station_id,
    coalesce(d.station_name, s.name) AS station_name,
    s.parent AS station_district_code,  -- the registry lists a station under its district
    TRY_CAST(s.longitude AS DOUBLE) AS station_longitude,
    TRY_CAST(s.latitude AS DOUBLE) AS station_latitude,
    d.observed_date,
    d.hours_observed,
    d.pm25_24h,
    d.pm10_24h,
    d.aqi.aqi AS aqi_daily,
    d.aqi.level AS aqi_level,
    d.aqi.category AS aqi_category,
    d.aqi.primary_pollutant AS primary_pollutant
FROM indexed AS d
LEFT JOIN code_list_air_station AS s ON s.code = d.station_id
