-- bluegreen: phase=expand
-- Expand: a nullable column the old release ignores.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS metadata jsonb;
