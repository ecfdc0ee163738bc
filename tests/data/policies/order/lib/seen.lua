-- The names of the files loaded so far, in the order they loaded.
return {}
