-- wrk script: POST a finished apiframe callback for a new task on every request, to the
-- static-secret route. Each request is a new job, event and delivery per handler.
--   SECRET=... wrk -t2 -c16 -d20s -s deploy/bench/callbacks.lua http://127.0.0.1:8101
local threads = 0

function setup(thread)
  thread:set("lane", threads)
  threads = threads + 1
end

local sent = 0
local secret = os.getenv("SECRET") or "bench-secret"
local run = tostring(os.time())

function request()
  sent = sent + 1
  local task = string.format("bench-%s-%d-%d", run, lane, sent)
  local body = string.format(
    '{"task_id":"%s","task_type":"runway","status":"finished","percentage":100,'
      .. '"video_url":"https://cdn.example/%s.mp4"}',
    task, task)
  return wrk.format("POST", "/hooks/apiframe",
    {["Content-Type"] = "application/json", ["x-webhook-secret"] = secret}, body)
end
