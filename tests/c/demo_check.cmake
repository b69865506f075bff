# Runs the C gateway demo (examples/c/gateway_demo.c) for a second, writing NDJSON to a file,
# then checks the file independently of the demo's own summary: one line per entry the demo
# says the dispatcher accepted, every line a JSON object with a request_id, no line twice.
#
#   cmake -DDEMO=<gateway_demo executable> -DOUT=<file> [-DLAUNCHER="valgrind --args"] -P demo_check.cmake
foreach(var DEMO OUT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "usage: cmake -DDEMO=<exe> -DOUT=<file> -P demo_check.cmake")
  endif()
endforeach()
file(REMOVE "${OUT}")
separate_arguments(launcher UNIX_COMMAND "${LAUNCHER}")

string(TIMESTAMP t0 "%s")
execute_process(
  COMMAND ${launcher} "${DEMO}" --duration 1 --threads 4 --rate 4000 --ms-delay 50 --out "${OUT}"
  OUTPUT_VARIABLE output ERROR_VARIABLE errors RESULT_VARIABLE rc TIMEOUT 300)
string(TIMESTAMP t1 "%s")
message("${output}${errors}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "gateway_demo exited with ${rc}")
endif()
if(NOT output MATCHES "entries enqueued +([0-9]+)")
  message(FATAL_ERROR "no 'entries enqueued' line in the summary")
endif()
set(enqueued ${CMAKE_MATCH_1})

file(STRINGS "${OUT}" lines)
list(LENGTH lines total)
file(STRINGS "${OUT}" json_lines REGEX "^{\"ts\":[0-9.]+,\"request_id\":\"[0-9a-f]+\",.*}$")
list(LENGTH json_lines json)
string(REGEX MATCHALL "\"request_id\":\"[0-9a-f]+\"" ids "${json_lines}")
list(REMOVE_DUPLICATES ids)
list(LENGTH ids unique)
math(EXPR seconds "${t1} - ${t0}")
message("gateway_demo: ${enqueued} entries enqueued; the file holds ${total} lines, "
        "${json} JSON log lines, ${unique} distinct request ids; ${seconds} s")
if(enqueued EQUAL 0 OR NOT total EQUAL enqueued OR NOT json EQUAL total OR NOT unique EQUAL total)
  message(FATAL_ERROR "the file does not hold exactly one log line per entry enqueued")
endif()
