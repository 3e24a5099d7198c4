"""The resource catalog (数据资源一本账): entries built from the registry, the contracts and the lake;
catalog rules; public-data registration; drafting a contract for a new system."""
