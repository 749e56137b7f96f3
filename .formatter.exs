# Used by "mix format"
[
  inputs: ["{mix,.formatter}.exs", "{config,lib,mix,test,bench}/**/*.{ex,exs}"]
]
