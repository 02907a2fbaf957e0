-- wrk script for scripts/evaluate: the kv component under a write/read mix.
-- 20 % PUT, 80 % GET, spread over a handful of keys that scripts/evaluate stores first (so
-- every GET finds its key: 200, and every PUT replaces: 200). Routes: components/kv/src/lib.rs
-- (the component is served at /kv/, its own route is /kv/<key>).
local keys = { "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7" }
local body = string.rep("v", 64)
local put_share = 0.2

request = function()
  local key = keys[math.random(#keys)]
  if math.random() < put_share then
    return wrk.format("PUT", "/kv/kv/" .. key, { ["Content-Type"] = "application/octet-stream" }, body)
  end
  return wrk.format("GET", "/kv/kv/" .. key)
end
