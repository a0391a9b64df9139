"""Many ``visionflow run`` processes sharing the streams through leases in Redis."""
