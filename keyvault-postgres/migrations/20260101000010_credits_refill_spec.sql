-- The refill a balance was opened or replaced for, in its text form (`daily:100`; '' for
-- credits without a refill). A spend applies a refill only when the caller's spec is this
-- one: an instance still holding a key's previous configuration (instances learn of a change
-- up to a second late) must not set the new balance to the old refill's amount.
-- NULL: not known (a balance opened before this migration whose key could not be read); it
-- matches every caller, as every balance did before.
ALTER TABLE kv_credits ADD COLUMN refill_spec text;

-- Existing balances take the refill of their quota's current key: the one not superseded by
-- a rotation (configuration changes during a grace are made on the new key), else the most
-- recently updated.
UPDATE kv_credits AS c SET refill_spec = (
    SELECT CASE
        WHEN k.credits IS NULL THEN NULL
        WHEN jsonb_typeof(k.credits -> 'refill') IS NULL
          OR jsonb_typeof(k.credits -> 'refill') = 'null' THEN ''
        WHEN jsonb_typeof(k.credits -> 'refill' -> 'interval') = 'string'
         AND jsonb_typeof(k.credits -> 'refill' -> 'amount') = 'number'
            THEN (k.credits -> 'refill' ->> 'interval') || ':'
              || (k.credits -> 'refill' ->> 'amount')
    END
    FROM kv_keys k
    WHERE k.quota_id = c.quota_id
    ORDER BY k.superseded_by IS NULL DESC, k.updated_at DESC
    LIMIT 1
);
