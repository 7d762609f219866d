// The upload page: sends files with tus to this page's own URL.
