-- Argo CD health check for takovm.dev/PythonJob.
-- Input: the live object as `obj`. Output: hs.status (Progressing | Healthy | Degraded) and hs.message.
-- The same verdict as kstatus: a status written for an older generation, or Reconciling=True, is
-- Progressing; Stalled=True (failed, timeout, OOM, cancelled) is Degraded; Ready=True is Healthy.
-- Statuses written before these conditions existed are read by their phase.
local hs = {}

local function condition(status, wanted)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function describe(status, fallback)
  local text = fallback
  if status.error ~= nil and status.error.type ~= nil then
    text = status.error.type
    if status.error.message ~= nil and status.error.message ~= "" then
      text = text .. ": " .. status.error.message
    end
  elseif status.message ~= nil and status.message ~= "" then
    text = status.message
  end
  if status.exitCode ~= nil then
    text = text .. " (exit code " .. tostring(status.exitCode) .. ")"
  end
  return text
end

local status = obj.status
if status == nil or (status.phase == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the job"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status, "Stalled")
local ready = condition(status, "Ready")
local reconciling = condition(status, "Reconciling")
local phase = status.phase
local cancelling = obj.spec ~= nil and obj.spec.cancel == true

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(status, "Job " .. string.lower(stalled.reason or "failed"))
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(status, "Job succeeded")
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  if cancelling then
    hs.message = "Cancellation requested"
  else
    hs.message = describe(status, "Job " .. string.lower(reconciling.reason or "running"))
  end
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(status, "Job succeeded")
elseif phase == "Failed" or phase == "Timeout" or phase == "OOM" or phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = describe(status, "Job " .. string.lower(phase))
elseif phase == "Queued" or phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
  if cancelling then
    hs.message = "Cancellation requested"
  else
    hs.message = describe(status, "Job " .. string.lower(phase))
  end
else
  hs.status = "Unknown"
  hs.message = "Unrecognised phase " .. tostring(phase)
end
return hs
