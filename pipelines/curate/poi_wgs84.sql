-- 兴趣点 (WGS-84) (poi_wgs84): the points of interest with coordinates in WGS-84. std.poi already holds them in
-- CGCS2000, which agrees with WGS-84 to centimetres: standardization converted each source's declared CRS on the
-- way into std (the POI system delivers GCJ-02; pipelines/quality/geo.py), so no transformation is repeated here.
SELECT poi_id, poi_name, poi_category, longitude, latitude, poi_district_code, 'WGS-84' AS crs
FROM std_poi
