// Live updates for the dashboard: one EventSource per page, rows updated in place.
// Every value from the server is set with textContent, never as HTML.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const jobId = document.body.dataset.jobId;

  function setStatus(cell, status) {
    cell.textContent = status;
    cell.className = "status status-" + status;
  }

  // A moving (indeterminate) bar only while the job runs; no bar for a queued or ended job
  // that never said how far it got.
  function setProgress(cell, progress, status) {
    let bar = cell.querySelector("progress");
    let label = cell.querySelector(".pct");
    if (!label) {
      label = document.createElement("span");
      label.className = "pct";
      cell.appendChild(label);
    }
    const none = progress === null || progress === undefined;
    if (none && status !== "running") {
      if (bar) bar.remove();
      cell.textContent = "";
      cell.appendChild(label);
      label.textContent = "-";
      return;
    }
    if (!bar) {
      bar = document.createElement("progress");
      bar.max = 1;
      cell.textContent = "";
      cell.append(bar, " ", label);
    }
    if (none) {
      bar.removeAttribute("value");
      label.textContent = "-";
    } else {
      bar.value = progress;
      label.textContent = Math.round(progress * 100) + "%";
    }
  }

  function jobRow(job) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.id;
    const idCell = document.createElement("td");
    const link = document.createElement("a");
    link.href = "/ui/jobs/" + encodeURIComponent(job.id);
    link.className = "mono";
    link.textContent = job.id;
    idCell.appendChild(link);
    const provider = document.createElement("td");
    provider.textContent = job.provider;
    const status = document.createElement("td");
    status.dataset.field = "status";
    const progress = document.createElement("td");
    progress.dataset.field = "progress";
    const age = document.createElement("td");
    age.dataset.field = "age";
    age.textContent = "new";
    const task = document.createElement("td");
    task.className = "mono";
    task.textContent = job.task_id || "-";
    const error = document.createElement("td");
    error.dataset.field = "error";
    error.className = "error";
    const metadata = document.createElement("td");
    metadata.dataset.field = "metadata";
    metadata.className = "mono";
    metadata.textContent = job.metadata || "";
    metadata.title = job.metadata || "";
    row.append(idCell, provider, status, progress, age, task, error, metadata);
    return row;
  }

  function updateJob(job) {
    const key = '[data-job-id="' + CSS.escape(job.id) + '"]';
    let row = document.querySelector("tr" + key + ", dl" + key);
    if (!row && page === "jobs") {
      // Ids sort by creation: only a job newer than the top row is new; an older one that
      // changed belongs to a later page.
      const body = document.querySelector("#jobs tbody");
      const top = body.querySelector("tr[data-job-id]");
      if (top && job.id <= top.dataset.jobId) return;
      row = jobRow(job);
      body.insertBefore(row, body.firstChild);
    }
    if (!row) return;
    setStatus(row.querySelector('[data-field="status"]'), job.status);
    setProgress(row.querySelector('[data-field="progress"]'), job.progress, job.status);
    const raw = row.querySelector('[data-field="raw_status"]');
    if (raw) raw.textContent = job.raw_status || "-";
    const error = row.querySelector('[data-field="error"]');
    if (error) error.textContent = job.error || "";
  }

  function updateDelivery(delivery) {
    const row = document.querySelector('tr[data-delivery-id="' + CSS.escape(delivery.id) + '"]');
    if (!row) return;
    const state = row.querySelector('[data-field="state"]');
    state.textContent = delivery.state;
    state.className = "state-" + delivery.state;
    row.querySelector('[data-field="attempts"]').textContent = String(delivery.attempts);
    row.querySelector('[data-field="last_error"]').textContent = delivery.last_error || "-";
    const replay = row.querySelector("form.replay");
    if (replay) replay.hidden = !(delivery.state === "dead" || delivery.state === "done");
  }

  // Filtered and later pages of the list are not live: a new job may not belong there.
  if (page !== "jobs" && page !== "job") return;
  if (document.body.dataset.stream === "off") return;
  const url = page === "job" ? "/ui/stream?job=" + encodeURIComponent(jobId) : "/ui/stream";
  const source = new EventSource(url);
  source.addEventListener("job", function (message) { updateJob(JSON.parse(message.data)); });
  source.addEventListener("delivery", function (message) { updateDelivery(JSON.parse(message.data)); });
  source.addEventListener("open", function () { document.body.dataset.live = "yes"; });
  source.addEventListener("error", function () { document.body.dataset.live = "no"; });
})();
