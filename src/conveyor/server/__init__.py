"""What a Conveyor process is assembled from: ``runtime`` builds the service and the
background parts a process runs (worker, reaper, upload trigger); ``app`` is the web
app that serves the REST API and the console around them.  Nothing below imports it:
it is the one place that knows every part."""
