# Multi-node tests start real :peer nodes on loopback, which needs the Erlang
# port mapper daemon. .ci/run and bin/test start it; starting it here as well
# lets `mix test` work on its own. `epmd -daemon` is a no-op when one runs.
if epmd = System.find_executable("epmd") do
  System.cmd(epmd, ["-daemon"])
end

# The full-disk test mounts a small tmpfs, which needs root. Where that is
# not allowed the test is excluded, and the reason printed.
probe = Path.join(System.tmp_dir!(), "vsmcp_mount_probe_#{System.unique_integer([:positive])}")
File.mkdir_p!(probe)

mount_result =
  if System.find_executable("mount") && System.find_executable("umount") do
    System.cmd("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], stderr_to_stdout: true)
  else
    {"no mount command", 1}
  end

exclude =
  case mount_result do
    {_, 0} ->
      System.cmd("umount", [probe])
      []

    {out, _} ->
      IO.puts("excluding :needs_mount tests (cannot mount a tmpfs here: #{String.trim(out)})")
      [:needs_mount]
  end

File.rm_rf(probe)

# The scheduler-hygiene tests time NIF slices on normal schedulers in
# microseconds: they run in a VM of their own (`mix test --only
# scheduler_hygiene`, a step of bin/test), not after the property tests
# that leave hundreds of MB of freed memory and thousands of processes
# behind.
config = ExUnit.configuration()

exclude =
  if :scheduler_hygiene in Keyword.get(config, :include, []),
    do: exclude,
    else: [:scheduler_hygiene | exclude]

# Keep what the command line excluded (`--only` excludes :test).
ExUnit.start(exclude: exclude ++ Keyword.get(config, :exclude, []))
