-- name: call_sent
INSERT INTO gateway_calls (id, kind, sent_at, caller, consumer, kid, target_uri, nonce, request_headers, with_token,
                           request_body)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11);

-- name: call_answered
UPDATE gateway_calls
SET answered_at = $2, outcome = $3, status = $4, problem_type = $5, reason = $6, verification = $7,
    broker_request_id = $8, log_entry_id = $9, inclusion_promise = $10, response_headers = $11, response_body = $12
WHERE id = $1 AND outcome = 'sent'
RETURNING id;

-- name: call_get
SELECT * FROM gateway_calls WHERE id = $1;

-- name: ping
SELECT 1;
