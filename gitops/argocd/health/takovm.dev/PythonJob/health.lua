-- Argo CD health check for takovm.dev/PythonJob.
-- Input: the live object as `obj`. Output: hs.status (Healthy | Progressing | Degraded | Suspended)
-- and hs.message. Reads status.phase first, then the kstatus-style conditions, and treats a status
-- written for an older generation as not yet reconciled.
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

local phase = status.phase
if phase == nil then
  -- No phase: derive it from the conditions alone.
  local succeeded = condition(status, "Succeeded")
  local failed = condition(status, "Failed")
  if succeeded ~= nil and succeeded.status == "True" then
    phase = "Succeeded"
  elseif failed ~= nil and failed.status == "True" then
    phase = "Failed"
  else
    phase = "Running"
  end
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(status, "Job succeeded")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(status, "Job failed")
elseif phase == "Timeout" then
  hs.status = "Degraded"
  hs.message = describe(status, "Job exceeded its timeout")
elseif phase == "OOM" then
  hs.status = "Degraded"
  hs.message = describe(status, "Job exceeded its memory limit")
elseif phase == "Cancelled" then
  -- Cancelled on purpose (spec.cancel): not a failure of the platform.
  hs.status = "Suspended"
  hs.message = describe(status, "Job cancelled")
elseif phase == "Queued" then
  hs.status = "Progressing"
  hs.message = describe(status, "Waiting for a free slot")
elseif phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
  if obj.spec ~= nil and obj.spec.cancel == true then
    hs.message = "Cancellation requested"
  else
    hs.message = describe(status, "Job " .. string.lower(phase))
  end
else
  hs.status = "Unknown"
  hs.message = "Unrecognised phase " .. tostring(phase)
end
return hs
