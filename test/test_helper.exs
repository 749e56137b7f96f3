# Multi-node tests start real :peer nodes on loopback, which needs the Erlang
# port mapper daemon. .ci/run and bin/test start it; starting it here as well
# lets `mix test` work on its own. `epmd -daemon` is a no-op when one runs.
if epmd = System.find_executable("epmd") do
  System.cmd(epmd, ["-daemon"])
end

ExUnit.start()
